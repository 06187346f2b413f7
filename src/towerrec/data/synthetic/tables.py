"""The synthetic world's fixed data: category taxonomy, per-language vocabularies and behaviour knobs.

Pure tables, no logic: `world`, `simulate` and `render` read them. English and Chinese entries stand side
by side (`nouns` / `nouns_zh`, `LINES` / `LINES_ZH`, ...); ids are the English names.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# ---------------------------------------------------------------------------------------------------
# Taxonomy
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    key: str
    path: str  # English category path, "Top > Mid > Leaf"
    path_zh: str
    nouns: tuple[str, ...]  # product nouns (synonyms), natural case
    nouns_zh: tuple[str, ...]
    price: float  # typical mid-tier price
    use: str  # "for ..." phrase
    use_zh: str
    next: tuple[str, ...]  # complementary next-purchase leaves, strongest first
    sizes: tuple[str, ...] = ()
    sizes_zh: tuple[str, ...] | None = None  # None: same as `sizes`
    colors: str = ""  # palette name, "" for none
    materials: tuple[str, ...] = ()
    consumable: bool = False  # re-bought: more same-category repeats


_L = Leaf
_SHIRT = ("S", "M", "L", "XL")
_SML = ("S", "M", "L")
_SML_ZH = ("小号", "中号", "大号")
_SHOE = ("EU 38", "EU 40", "EU 42", "EU 44", "EU 46")
_SHOE_ZH = ("38码", "40码", "42码", "44码", "46码")
_LAPTOP = ('13.3"', '14"', '15.6"', '16"')

# relative traffic of each top category
TOP_WEIGHT = {
    "Electronics": 1.4,
    "Home & Kitchen": 1.1,
    "Sports & Outdoors": 1.0,
    "Clothing & Shoes": 1.2,
    "Beauty & Personal Care": 1.0,
    "Pet Supplies": 0.8,
    "Office Products": 0.7,
    "Toys & Games": 0.8,
}

# fmt: off
LEAVES: tuple[Leaf, ...] = (
    # Electronics
    _L("mirrorless", "Electronics > Cameras > Mirrorless Cameras", "数码电子 > 相机 > 微单相机",
       ("mirrorless camera", "camera body", "compact system camera"), ("微单相机", "无反相机", "微单"), 850,
       "for travel and street photography", "适合旅行与街拍", ("memory_cards", "camera_bags", "tripods"),
       ("APS-C", "Full Frame"), ("APS-C画幅", "全画幅"), "neutral"),
    _L("action_cams", "Electronics > Cameras > Action Cameras", "数码电子 > 相机 > 运动相机",
       ("action camera", "4K action cam", "sports camera"), ("运动相机", "4K运动摄像机", "防抖运动相机"), 220,
       "for cycling, diving and outdoor adventures", "适合骑行、潜水和户外探险",
       ("memory_cards", "bike_helmets", "batteries"), colors="neutral"),
    _L("memory_cards", "Electronics > Camera Accessories > Memory Cards", "数码电子 > 摄影配件 > 存储卡",
       ("memory card", "SD card", "microSD card"), ("存储卡", "SD卡", "TF内存卡"), 25,
       "for fast 4K recording and burst shooting", "支持4K高速录制与连拍", ("tripods", "camera_bags"),
       ("64 GB", "128 GB", "256 GB", "512 GB")),
    _L("tripods", "Electronics > Camera Accessories > Tripods", "数码电子 > 摄影配件 > 三脚架",
       ("tripod", "travel tripod", "camera tripod"), ("三脚架", "便携三脚架", "相机支架"), 70,
       "for steady long exposures and video", "适合长曝光与稳定拍摄", ("camera_bags", "memory_cards"),
       ("150 cm", "170 cm"), materials=("aluminium", "carbon fiber")),
    _L("camera_bags", "Electronics > Camera Accessories > Camera Bags", "数码电子 > 摄影配件 > 相机包",
       ("camera bag", "camera backpack", "sling camera bag"), ("相机包", "摄影双肩包", "单肩相机包"), 55,
       "to carry a body, lenses and accessories", "可收纳机身、镜头与配件", ("tripods", "memory_cards"),
       colors="neutral", materials=("nylon", "canvas", "leather")),
    _L("laptops", "Electronics > Computers > Laptops", "数码电子 > 电脑 > 笔记本电脑",
       ("laptop", "notebook computer", "ultrabook"), ("笔记本电脑", "轻薄本", "手提电脑"), 950,
       "for work, study and everyday computing", "适合办公、学习与日常使用",
       ("laptop_bags", "mice", "keyboards", "monitors"), _LAPTOP, colors="neutral"),
    _L("laptop_bags", "Electronics > Computer Accessories > Laptop Bags", "数码电子 > 电脑配件 > 电脑包",
       ("laptop bag", "laptop sleeve", "laptop backpack"), ("电脑包", "笔记本内胆包", "电脑双肩包"), 40,
       "to protect your laptop on the go", "出行时保护您的笔记本电脑", ("mice", "chargers"),
       _LAPTOP, colors="neutral", materials=("nylon", "polyester", "leather")),
    _L("mice", "Electronics > Computer Accessories > Mice", "数码电子 > 电脑配件 > 鼠标",
       ("wireless mouse", "mouse", "ergonomic mouse"), ("无线鼠标", "鼠标", "人体工学鼠标"), 28,
       "for precise everyday navigation", "日常操作精准顺滑", ("keyboards", "monitors"), colors="neutral"),
    _L("keyboards", "Electronics > Computer Accessories > Keyboards", "数码电子 > 电脑配件 > 键盘",
       ("keyboard", "mechanical keyboard", "wireless keyboard"), ("键盘", "机械键盘", "无线键盘"), 60,
       "for comfortable all-day typing", "长时间打字依然舒适", ("mice", "monitors"), colors="neutral"),
    _L("monitors", "Electronics > Computer Accessories > Monitors", "数码电子 > 电脑配件 > 显示器",
       ("monitor", "IPS monitor", "4K display"), ("显示器", "IPS显示器", "4K显示屏"), 240,
       "for a larger, sharper workspace", "带来更大更清晰的工作空间", ("keyboards", "desk_lamps"),
       ('24"', '27"', '32"')),
    _L("smartphones", "Electronics > Phones > Smartphones", "数码电子 > 手机 > 智能手机",
       ("smartphone", "5G phone", "mobile phone"), ("智能手机", "5G手机", "手机"), 550,
       "with a sharp camera and all-day battery", "拍照清晰，续航持久",
       ("phone_cases", "chargers", "headphones"), ("128 GB", "256 GB", "512 GB"), colors="bright"),
    _L("phone_cases", "Electronics > Phone Accessories > Phone Cases", "数码电子 > 手机配件 > 手机壳",
       ("phone case", "protective case", "slim case"), ("手机壳", "防摔保护壳", "超薄手机壳"), 18,
       "that guards against drops and scratches", "防摔防刮", ("chargers", "headphones"),
       colors="bright", materials=("silicone", "TPU", "leather")),
    _L("chargers", "Electronics > Phone Accessories > Chargers", "数码电子 > 手机配件 > 充电器",
       ("fast charger", "USB-C charger", "wall charger"), ("快充充电器", "USB-C充电头", "充电器"), 24,
       "for quick top-ups at home or on the road", "居家出行快速补电", ("headphones", "batteries"),
       ("20 W", "45 W", "65 W", "100 W"), colors="neutral"),
    _L("headphones", "Electronics > Audio > Headphones", "数码电子 > 影音 > 耳机",
       ("headphones", "wireless earbuds", "noise-cancelling headphones"), ("耳机", "无线耳机", "降噪耳机"), 110,
       "for immersive music and calls", "沉浸式听音与通话", ("speakers", "chargers"), colors="bright"),
    _L("speakers", "Electronics > Audio > Bluetooth Speakers", "数码电子 > 影音 > 蓝牙音箱",
       ("Bluetooth speaker", "portable speaker", "smart speaker"), ("蓝牙音箱", "便携音箱", "智能音箱"), 75,
       "with rich sound for home and outdoors", "室内户外都有饱满音质", ("headphones", "batteries"),
       colors="bright"),
    _L("batteries", "Electronics > Power > Rechargeable Batteries", "数码电子 > 电源 > 充电电池",
       ("rechargeable batteries", "battery pack", "NiMH batteries"), ("充电电池", "电池套装", "镍氢电池"), 14,
       "for toys, remotes and flashlights", "适用于玩具、遥控器与手电筒", ("headlamps", "bike_lights", "rc_cars"),
       ("AA x4", "AAA x4", "AA x8"), ("5号4节", "7号4节", "5号8节"), consumable=True),
    # Home & Kitchen
    _L("frying_pans", "Home & Kitchen > Cookware > Frying Pans", "家居厨房 > 锅具 > 平底锅",
       ("frying pan", "skillet", "non-stick pan"), ("平底锅", "煎锅", "不粘锅"), 38,
       "for searing, frying and everyday cooking", "煎炒烹炸样样在行",
       ("saucepans", "knife_sets", "cutting_boards"), ("24 cm", "28 cm", "32 cm"),
       materials=("stainless steel", "cast iron", "non-stick aluminium")),
    _L("saucepans", "Home & Kitchen > Cookware > Saucepans", "家居厨房 > 锅具 > 汤锅",
       ("saucepan", "stockpot", "sauce pot"), ("汤锅", "炖锅", "奶锅"), 42,
       "for soups, sauces and pasta", "煲汤、煮面、做酱汁", ("frying_pans", "cutting_boards"),
       ("1.5 L", "2 L", "3 L", "5 L"), materials=("stainless steel", "enamelled cast iron")),
    _L("coffee_makers", "Home & Kitchen > Kitchen Appliances > Coffee Makers", "家居厨房 > 厨房电器 > 咖啡机",
       ("coffee maker", "espresso machine", "drip coffee machine"), ("咖啡机", "意式咖啡机", "滴滤咖啡机"), 140,
       "for café-style coffee at home", "在家享受咖啡馆品质", ("coffee_beans", "mugs"), colors="neutral"),
    _L("blenders", "Home & Kitchen > Kitchen Appliances > Blenders", "家居厨房 > 厨房电器 > 搅拌机",
       ("blender", "smoothie blender", "high-speed blender"), ("搅拌机", "破壁机", "料理机"), 75,
       "for smoothies, soups and sauces", "轻松制作奶昔、浓汤与酱料", ("knife_sets", "cutting_boards", "mugs"),
       ("1 L", "1.5 L", "2 L"), colors="neutral"),
    _L("coffee_beans", "Home & Kitchen > Coffee & Tea > Coffee Beans", "家居厨房 > 咖啡茶饮 > 咖啡豆",
       ("coffee beans", "whole bean coffee", "espresso roast"), ("咖啡豆", "烘焙咖啡豆", "意式拼配咖啡豆"), 14,
       "roasted for a rich, balanced cup", "烘焙出浓郁均衡的口感", ("mugs", "coffee_makers"),
       ("250 g", "500 g", "1 kg"), consumable=True),
    _L("mugs", "Home & Kitchen > Coffee & Tea > Mugs", "家居厨房 > 咖啡茶饮 > 马克杯",
       ("coffee mug", "travel mug", "tumbler"), ("马克杯", "随行杯", "保温杯"), 14,
       "for your daily coffee or tea", "适合日常咖啡与茶饮", ("coffee_beans",), ("350 ml", "450 ml"),
       colors="bright", materials=("ceramic", "glass", "stainless steel")),
    _L("knife_sets", "Home & Kitchen > Kitchen Tools > Knife Sets", "家居厨房 > 厨房工具 > 刀具套装",
       ("knife set", "chef's knife set", "kitchen knife block"), ("刀具套装", "厨师刀套装", "菜刀组合"), 65,
       "for precise slicing and dicing", "切片切丁精准利落", ("cutting_boards", "frying_pans"),
       materials=("stainless steel", "Damascus steel", "ceramic")),
    _L("cutting_boards", "Home & Kitchen > Kitchen Tools > Cutting Boards", "家居厨房 > 厨房工具 > 砧板",
       ("cutting board", "chopping board", "butcher block"), ("砧板", "切菜板", "实木菜板"), 22,
       "for safe, hygienic food prep", "备菜安全卫生", ("knife_sets", "frying_pans"), _SML, _SML_ZH,
       materials=("bamboo", "walnut wood", "plastic")),
    # Sports & Outdoors
    _L("tents", "Sports & Outdoors > Camping > Tents", "运动户外 > 露营 > 帐篷",
       ("tent", "camping tent", "backpacking tent"), ("帐篷", "露营帐篷", "徒步帐篷"), 140,
       "for weekend camping and backpacking trips", "适合周末露营与徒步旅行",
       ("sleeping_bags", "headlamps", "hiking_boots"), ("1-person", "2-person", "4-person"),
       ("单人", "双人", "四人"), "outdoor"),
    _L("sleeping_bags", "Sports & Outdoors > Camping > Sleeping Bags", "运动户外 > 露营 > 睡袋",
       ("sleeping bag", "mummy sleeping bag", "down sleeping bag"), ("睡袋", "木乃伊睡袋", "羽绒睡袋"), 65,
       "rated for cold nights outdoors", "寒夜露营依然温暖", ("headlamps", "tents"),
       ("0 °C", "-5 °C", "-10 °C"), colors="outdoor"),
    _L("headlamps", "Sports & Outdoors > Camping > Headlamps", "运动户外 > 露营 > 头灯",
       ("headlamp", "LED headlamp", "running headlamp"), ("头灯", "LED头灯", "跑步头灯"), 22,
       "for hands-free light on the trail", "夜间户外解放双手", ("hiking_boots", "batteries"),
       ("200 lm", "400 lm", "1000 lm")),
    _L("yoga_mats", "Sports & Outdoors > Fitness > Yoga Mats", "运动户外 > 健身 > 瑜伽垫",
       ("yoga mat", "exercise mat", "non-slip yoga mat"), ("瑜伽垫", "健身垫", "防滑瑜伽垫"), 28,
       "for yoga, pilates and home workouts", "适合瑜伽、普拉提和居家健身",
       ("resistance_bands", "dumbbells", "t_shirts"), ("4 mm", "6 mm", "8 mm"), colors="bright",
       materials=("TPE", "natural rubber", "PVC")),
    _L("dumbbells", "Sports & Outdoors > Fitness > Dumbbells", "运动户外 > 健身 > 哑铃",
       ("dumbbell set", "adjustable dumbbells", "hex dumbbells"), ("哑铃套装", "可调节哑铃", "六角哑铃"), 45,
       "for strength training at home", "居家力量训练", ("resistance_bands", "yoga_mats"),
       ("2 x 5 kg", "2 x 10 kg", "2 x 20 kg"), materials=("cast iron", "rubber-coated steel", "neoprene")),
    _L("resistance_bands", "Sports & Outdoors > Fitness > Resistance Bands", "运动户外 > 健身 > 弹力带",
       ("resistance bands", "exercise bands", "loop bands"), ("弹力带", "阻力带", "健身拉力圈"), 14,
       "for mobility and strength work anywhere", "随时随地拉伸与力量训练", ("yoga_mats",),
       ("light", "medium", "heavy"), ("轻阻力", "中阻力", "重阻力"), "bright", ("latex", "fabric")),
    _L("bikes", "Sports & Outdoors > Cycling > Bikes", "运动户外 > 骑行 > 自行车",
       ("bike", "road bike", "mountain bike"), ("自行车", "公路车", "山地车"), 650,
       "for commuting and weekend rides", "通勤与周末骑行皆宜", ("bike_helmets", "bike_lights"),
       _SML, colors="bright", materials=("aluminium", "carbon fiber", "steel")),
    _L("bike_helmets", "Sports & Outdoors > Cycling > Bike Helmets", "运动户外 > 骑行 > 骑行头盔",
       ("bike helmet", "cycling helmet", "MIPS helmet"), ("骑行头盔", "自行车头盔", "MIPS头盔"), 55,
       "for safe rides in town and on trails", "城市与山路骑行安全防护", ("bike_lights", "action_cams"),
       _SML, colors="bright"),
    _L("bike_lights", "Sports & Outdoors > Cycling > Bike Lights", "运动户外 > 骑行 > 车灯",
       ("bike light set", "rear bike light", "USB bike light"), ("自行车灯", "骑行尾灯", "USB充电车灯"), 22,
       "to see and be seen at night", "夜骑看得清也被看见", ("bike_helmets", "rain_jackets"),
       ("400 lm", "800 lm")),
    # Clothing & Shoes
    _L("running_shoes", "Clothing & Shoes > Shoes > Running Shoes", "服饰鞋靴 > 鞋 > 跑鞋",
       ("running shoes", "road running shoes", "trainers"), ("跑鞋", "公路跑鞋", "运动鞋"), 95,
       "with cushioned, responsive soles", "缓震回弹，脚感轻盈", ("sports_socks", "running_shorts", "t_shirts"),
       _SHOE, _SHOE_ZH, "apparel"),
    _L("hiking_boots", "Clothing & Shoes > Shoes > Hiking Boots", "服饰鞋靴 > 鞋 > 登山靴",
       ("hiking boots", "waterproof hiking boots", "trekking boots"), ("登山靴", "防水徒步鞋", "户外登山鞋"), 125,
       "with grippy soles for rough trails", "大底抓地力强，适合崎岖山路", ("sports_socks", "rain_jackets", "tents"),
       _SHOE, _SHOE_ZH, "outdoor", ("leather", "suede", "synthetic mesh")),
    _L("running_shorts", "Clothing & Shoes > Activewear > Running Shorts", "服饰鞋靴 > 运动服饰 > 跑步短裤",
       ("running shorts", "training shorts", "athletic shorts"), ("跑步短裤", "训练短裤", "运动短裤"), 28,
       "with quick-dry fabric", "速干面料，透气清爽", ("t_shirts", "sports_socks"), _SHIRT, colors="apparel",
       materials=("polyester", "nylon")),
    _L("sports_socks", "Clothing & Shoes > Activewear > Sports Socks", "服饰鞋靴 > 运动服饰 > 运动袜",
       ("sports socks", "running socks", "crew socks"), ("运动袜", "跑步袜", "中筒袜"), 11,
       "with cushioning and moisture control", "缓震吸汗", ("running_shoes", "running_shorts"), _SML,
       colors="apparel", materials=("cotton", "merino wool", "polyester"), consumable=True),
    _L("rain_jackets", "Clothing & Shoes > Outerwear > Rain Jackets", "服饰鞋靴 > 外套 > 防水夹克",
       ("rain jacket", "waterproof jacket", "shell jacket"), ("防水夹克", "冲锋衣", "防雨外套"), 105,
       "that keeps you dry in wind and rain", "防风防雨，保持干爽", ("hiking_boots", "t_shirts"), _SHIRT,
       colors="outdoor"),
    _L("t_shirts", "Clothing & Shoes > Tops > T-Shirts", "服饰鞋靴 > 上衣 > T恤",
       ("T-shirt", "crew neck tee", "performance tee"), ("T恤", "圆领T恤", "运动T恤"), 18,
       "for everyday comfort", "日常穿着舒适", ("running_shorts", "rain_jackets"), _SHIRT, colors="apparel",
       materials=("cotton", "polyester", "merino wool")),
    # Beauty & Personal Care
    _L("cleansers", "Beauty & Personal Care > Skincare > Facial Cleansers", "美妆个护 > 护肤 > 洁面",
       ("facial cleanser", "foaming cleanser", "gentle face wash"), ("洁面乳", "氨基酸洗面奶", "温和洁面"), 14,
       "that cleans without drying", "清洁不紧绷", ("moisturizers", "sunscreen"),
       ("100 ml", "150 ml", "200 ml"), consumable=True),
    _L("moisturizers", "Beauty & Personal Care > Skincare > Moisturizers", "美妆个护 > 护肤 > 面霜",
       ("moisturizer", "face cream", "hydrating gel cream"), ("面霜", "保湿霜", "补水凝霜"), 28,
       "for 24-hour hydration", "24小时持续保湿", ("sunscreen", "cleansers"), ("50 ml", "100 ml"),
       consumable=True),
    _L("sunscreen", "Beauty & Personal Care > Skincare > Sunscreen", "美妆个护 > 护肤 > 防晒",
       ("sunscreen", "face sunscreen", "sun lotion"), ("防晒霜", "面部防晒乳", "防晒乳"), 17,
       "with broad-spectrum UV protection", "广谱防晒，有效阻隔紫外线", ("cleansers", "moisturizers"),
       ("SPF 30", "SPF 50", "SPF 50+"), consumable=True),
    _L("shampoo", "Beauty & Personal Care > Hair Care > Shampoo", "美妆个护 > 洗护发 > 洗发水",
       ("shampoo", "repair shampoo", "anti-dandruff shampoo"), ("洗发水", "修护洗发露", "去屑洗发水"), 11,
       "for clean, healthy-looking hair", "洁净健康秀发", ("conditioner", "hair_dryers"),
       ("250 ml", "400 ml", "750 ml"), consumable=True),
    _L("conditioner", "Beauty & Personal Care > Hair Care > Conditioner", "美妆个护 > 洗护发 > 护发素",
       ("conditioner", "repair conditioner", "hair mask"), ("护发素", "修护护发素", "发膜"), 12,
       "that detangles and softens", "顺滑柔软不打结", ("shampoo", "hair_dryers"),
       ("250 ml", "400 ml", "750 ml"), consumable=True),
    _L("hair_dryers", "Beauty & Personal Care > Hair Care > Hair Dryers", "美妆个护 > 洗护发 > 吹风机",
       ("hair dryer", "ionic hair dryer", "travel hair dryer"), ("吹风机", "负离子吹风机", "便携吹风机"), 65,
       "for fast, frizz-free drying", "速干不毛躁", ("shampoo", "conditioner"), ("1200 W", "1800 W", "2200 W"),
       colors="bright"),
    # Pet Supplies
    _L("dog_food", "Pet Supplies > Dogs > Dog Food", "宠物用品 > 狗狗 > 狗粮",
       ("dry dog food", "grain-free dog food", "puppy food"), ("狗粮", "无谷狗粮", "幼犬粮"), 38,
       "with real meat and balanced nutrition", "真肉配方，营养均衡", ("dog_leashes", "dog_beds"),
       ("2 kg", "6 kg", "12 kg"), consumable=True),
    _L("dog_leashes", "Pet Supplies > Dogs > Leashes & Harnesses", "宠物用品 > 狗狗 > 牵引绳",
       ("dog leash", "retractable leash", "dog harness"), ("狗狗牵引绳", "伸缩牵引绳", "胸背带"), 18,
       "for safe, comfortable walks", "安全舒适遛狗", ("dog_beds", "dog_food"), _SML, _SML_ZH, "bright",
       ("nylon", "leather")),
    _L("dog_beds", "Pet Supplies > Dogs > Dog Beds", "宠物用品 > 狗狗 > 狗窝",
       ("dog bed", "orthopedic dog bed", "pet cushion"), ("狗窝", "记忆棉狗垫", "宠物垫"), 45,
       "for a cosy, supportive rest", "舒适支撑好睡眠", ("dog_food",), _SML, _SML_ZH, "neutral",
       ("memory foam", "fleece", "canvas")),
    _L("cat_food", "Pet Supplies > Cats > Cat Food", "宠物用品 > 猫咪 > 猫粮",
       ("cat food", "grain-free cat food", "kitten food"), ("猫粮", "无谷猫粮", "幼猫粮"), 28,
       "with high-protein recipes", "高蛋白配方", ("cat_litter", "cat_toys"), ("1.5 kg", "4 kg", "10 kg"),
       consumable=True),
    _L("cat_litter", "Pet Supplies > Cats > Cat Litter", "宠物用品 > 猫咪 > 猫砂",
       ("cat litter", "clumping litter", "low-dust litter"), ("猫砂", "结团猫砂", "低尘猫砂"), 18,
       "with strong odour control", "强效除臭", ("cat_food", "cat_toys"), ("5 L", "10 L", "20 L"),
       materials=("bentonite clay", "tofu", "silica gel"), consumable=True),
    _L("cat_toys", "Pet Supplies > Cats > Cat Toys", "宠物用品 > 猫咪 > 猫玩具",
       ("cat toy", "teaser wand", "catnip toy"), ("猫玩具", "逗猫棒", "猫薄荷玩具"), 9,
       "to keep indoor cats active", "让室内猫咪保持活力", ("cat_food", "cat_litter"), colors="bright"),
    # Office Products
    _L("office_chairs", "Office Products > Office Furniture > Office Chairs", "办公用品 > 办公家具 > 办公椅",
       ("office chair", "ergonomic chair", "desk chair"), ("办公椅", "人体工学椅", "电脑椅"), 190,
       "with adjustable lumbar support", "腰托可调，久坐不累", ("desks", "desk_lamps"), colors="neutral",
       materials=("mesh", "leather", "fabric")),
    _L("desks", "Office Products > Office Furniture > Desks", "办公用品 > 办公家具 > 办公桌",
       ("desk", "standing desk", "computer desk"), ("办公桌", "升降桌", "电脑桌"), 230,
       "for a tidy, productive workspace", "打造整洁高效的工作区", ("office_chairs", "desk_lamps", "monitors"),
       ("120 cm", "140 cm", "160 cm"), materials=("oak veneer", "walnut wood", "steel")),
    _L("desk_lamps", "Office Products > Lighting > Desk Lamps", "办公用品 > 照明 > 台灯",
       ("desk lamp", "LED desk lamp", "reading lamp"), ("台灯", "LED台灯", "护眼阅读灯"), 35,
       "with flicker-free, dimmable light", "无频闪，亮度可调", ("notebooks", "pens"), colors="neutral"),
    _L("notebooks", "Office Products > Stationery > Notebooks", "办公用品 > 文具 > 记事本",
       ("notebook", "hardcover journal", "dotted notebook"), ("记事本", "硬面手账", "点阵本"), 9,
       "for notes, plans and sketches", "记录笔记、计划与灵感", ("pens",), ("A5", "A4"), colors="bright",
       consumable=True),
    _L("pens", "Office Products > Stationery > Pens", "办公用品 > 文具 > 笔",
       ("gel pens", "ballpoint pens", "rollerball pens"), ("中性笔", "圆珠笔", "走珠笔"), 8,
       "for smooth, smudge-free writing", "书写顺滑不洇墨", ("notebooks",), ("0.5 mm", "0.7 mm"),
       colors="bright", consumable=True),
    # Toys & Games
    _L("building_sets", "Toys & Games > Building Toys > Building Sets", "玩具游戏 > 拼搭玩具 > 积木套装",
       ("building set", "brick set", "construction kit"), ("积木套装", "拼装积木", "益智拼搭套装"), 45,
       "for creative building, ages 8+", "8岁以上创意拼搭", ("board_games", "puzzles"),
       ("300 pcs", "800 pcs", "1500 pcs"), ("300颗粒", "800颗粒", "1500颗粒")),
    _L("board_games", "Toys & Games > Games > Board Games", "玩具游戏 > 桌面游戏 > 桌游",
       ("board game", "strategy board game", "family board game"), ("桌游", "策略桌游", "家庭桌游"), 32,
       "for game nights with family and friends", "适合家庭与朋友聚会", ("puzzles", "building_sets"),
       ("2-4 players", "2-6 players"), ("2-4人", "2-6人")),
    _L("puzzles", "Toys & Games > Games > Jigsaw Puzzles", "玩具游戏 > 桌面游戏 > 拼图",
       ("jigsaw puzzle", "landscape puzzle", "art puzzle"), ("拼图", "风景拼图", "益智拼图"), 16,
       "for relaxing evenings", "适合放松休闲", ("board_games",), ("500 pcs", "1000 pcs", "2000 pcs"),
       ("500片", "1000片", "2000片")),
    _L("rc_cars", "Toys & Games > Remote Control > RC Cars", "玩具游戏 > 遥控玩具 > 遥控车",
       ("RC car", "remote control car", "off-road RC truck"), ("遥控车", "遥控汽车", "越野遥控车"), 55,
       "with fast, responsive controls", "操控灵敏，速度快", ("batteries", "building_sets"), ("1:16", "1:10"),
       colors="bright"),
)
# fmt: on

TOPS = tuple(TOP_WEIGHT)
LEAF_INDEX = {leaf.key: i for i, leaf in enumerate(LEAVES)}


@dataclasses.dataclass(frozen=True)
class LeafText:
    """A leaf's words in one language."""

    path: str
    nouns: tuple[str, ...]
    use: str
    sizes: tuple[str, ...]


LEAF_TEXT = {
    "en": tuple(LeafText(leaf.path, leaf.nouns, leaf.use, leaf.sizes) for leaf in LEAVES),
    "zh": tuple(LeafText(leaf.path_zh, leaf.nouns_zh, leaf.use_zh, leaf.sizes_zh or leaf.sizes) for leaf in LEAVES),
}

# ---------------------------------------------------------------------------------------------------
# Attributes, brands, model lines and price-tier words
# ---------------------------------------------------------------------------------------------------

PALETTES = {
    "neutral": ("black", "white", "silver", "gray"),
    "bright": ("black", "white", "blue", "red", "green", "pink", "yellow", "purple"),
    "apparel": ("black", "white", "navy", "gray", "red", "olive", "beige", "blue"),
    "outdoor": ("olive", "orange", "navy", "black", "gray", "green"),
}
COLORS_ZH = {
    "black": "黑色", "white": "白色", "silver": "银色", "gray": "灰色", "blue": "蓝色", "red": "红色",
    "green": "绿色", "pink": "粉色", "yellow": "黄色", "purple": "紫色", "navy": "藏青色", "olive": "橄榄绿",
    "beige": "米色", "orange": "橙色",
}  # fmt: skip
MATERIALS_ZH = {
    "aluminium": "铝合金", "carbon fiber": "碳纤维", "nylon": "尼龙", "canvas": "帆布", "leather": "皮革",
    "polyester": "涤纶", "silicone": "硅胶", "TPU": "TPU", "stainless steel": "不锈钢", "cast iron": "铸铁",
    "non-stick aluminium": "不粘涂层铝", "enamelled cast iron": "珐琅铸铁", "ceramic": "陶瓷", "glass": "玻璃",
    "Damascus steel": "大马士革钢", "bamboo": "竹", "walnut wood": "胡桃木", "plastic": "塑料", "TPE": "TPE",
    "natural rubber": "天然橡胶", "PVC": "PVC", "rubber-coated steel": "包胶钢", "neoprene": "氯丁橡胶",
    "latex": "乳胶", "fabric": "布艺", "steel": "钢", "suede": "麂皮", "synthetic mesh": "合成网面",
    "cotton": "纯棉", "merino wool": "美利奴羊毛", "memory foam": "记忆棉", "fleece": "抓绒",
    "bentonite clay": "膨润土", "tofu": "豆腐", "silica gel": "水晶硅胶", "mesh": "网布", "oak veneer": "橡木贴皮",
}  # fmt: skip

# Brand names: a syllable pair, the same pair in both languages (brand i is "Norvik" / "北辰").
BRAND_HEADS = ("Nor", "Vel", "Ar", "Lum", "Kes", "Tor", "Mar", "Zen", "Sol", "Bri",
               "Cal", "Dra", "Ev", "Fal", "Gra", "Hal", "Ion", "Jun", "Kor", "Lyn")  # fmt: skip
BRAND_TAILS = ("vik", "ora", "ex", "tek", "ion", "ana", "wood", "line", "ix", "ara",
               "mont", "field", "lux", "ona", "sen")  # fmt: skip
BRAND_HEADS_ZH = ("北", "星", "云", "凯", "青", "华", "锐", "思", "瑞", "安",
                  "优", "博", "禾", "森", "极", "远", "朗", "智", "悦", "泽")  # fmt: skip
BRAND_TAILS_ZH = ("辰", "宇", "达", "盛", "源", "途", "尚", "峰", "嘉", "美",
                  "品", "乐", "驰", "然", "格")  # fmt: skip

# Model lines and adjectives that carry the price tier into the text.
LINES = (
    ("Lite", "Basic", "Go", "Essential"),
    ("Plus", "Classic", "One", "Active"),
    ("Pro", "Elite", "Ultra", "Signature"),
)
LINES_ZH = (("青春版", "基础版", "轻享版"), ("标准版", "经典款", "升级版"), ("旗舰版", "专业版", "尊享版"))
ADJS = (("affordable", "budget", "great-value", "no-frills"),
        ("reliable", "versatile", "well-made", "dependable"),
        ("premium", "professional-grade", "luxury", "high-end"))  # fmt: skip
ADJS_ZH = (("高性价比", "平价实用", "入门级"), ("品质可靠", "百搭耐用", "口碑经典"), ("高端", "专业级", "奢华"))
TIER_SENTENCES = (
    ("Great value for everyday use.", "An entry-level price without the compromises.",
     "A no-frills choice that gets the job done.", "Budget-friendly and easy to replace."),
    ("A dependable balance of quality and price.", "Solid build quality at a fair price.",
     "Our most popular choice for everyday users.", "Good materials and a sensible price."),
    ("Crafted from premium materials for demanding users.", "Top-of-the-line performance and finish.",
     "Designed for enthusiasts and professionals.", "Our flagship quality, built to last for years."),
)  # fmt: skip
TIER_SENTENCES_ZH = (
    ("价格亲民，日常够用。", "入门价格，品质不打折。", "简约实用，经济之选。"),
    ("品质与价格兼顾。", "做工扎实，价格公道。", "大众口碑款，日常首选。"),
    ("甄选高端材质，满足专业需求。", "旗舰级性能与做工。", "为发烧友与专业人士打造，经久耐用。"),
)
MODEL_LETTERS = "AXSZMKRTVE"

# ---------------------------------------------------------------------------------------------------
# Behaviour knobs, tuned so that popularity << item co-occurrence << a content-aware model
# (tests/data/test_synthetic.py checks the margins: re-run it when changing them)
# ---------------------------------------------------------------------------------------------------

# next-purchase mode probabilities: chain successor, same leaf, preferred top category, any leaf, bestseller
MODES = ("chain", "same", "preferred", "random", "trending")
CHAIN, SAME, PREFERRED, RANDOM, TRENDING = range(len(MODES))
MODE_P = np.array([0.52, 0.12, 0.21, 0.13, 0.02])
MODE_P_CONSUMABLE = np.array([0.30, 0.40, 0.15, 0.13, 0.02])
ANCHOR_LAST_P = 0.75  # the next purchase follows the last item, else an earlier one
TIER_USER_P, TIER_ANCHOR_P = 0.85, 0.05  # target price tier: the user's, the anchor's, else random
BRAND_ANCHOR_P = 0.2  # a loyal pick takes the anchor's brand, else a favourite brand
LOYALTY_BETA = (3.0, 2.0)  # per-user brand loyalty ~ Beta(a, b)
ZIPF_EXPONENT = 0.6  # within-category popularity
TIER_PRICE = np.array([0.55, 1.0, 1.9])
USER_TIER_P = np.array([0.35, 0.45, 0.20])
NUM_BESTSELLERS = 25
ITEMS_PER_DEMAND = 1.0  # items per leaf grow with the leaf's demand to this power
CANDIDATES = 4  # draws per purchase, the best attribute match wins
COLOR_NAMES = tuple(COLORS_ZH)
COLOR_P = np.array([6, 5, 2, 3, 3, 2, 2, 1.5, 1, 1, 2, 1, 1.5, 1], dtype=np.float64)  # black, white, ...
COLOR_P /= COLOR_P.sum()
EPOCH = 1_672_531_200  # 2023-01-01T00:00:00Z
TIE_P, SESSION_P = 0.06, 0.35  # same timestamp (one order), same session (minutes), else days later
REDRAWS = 4  # tries to replace a repeat purchase of a non-consumable item
